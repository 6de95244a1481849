"""Files whose column types drifted from the schema they were written for, read as the schema says.

A result or measure file of the current format may hold a column in another Arrow type than
its schema's (written by another pyarrow, by pandas, or rewritten by a user's tool): int32 for
int64, dictionary-encoded strings, an all-null column typed ``null``, ``large_string``. Every
reader of per-trial and measure files (``workers.results.record``, ``workers.results.measure_table``, and so
``analysis.load_*``, ``sweep compact``, ``sweep resume`` and ``sweep status``) judges such a
file by the one rule here: each of its columns is cast to the schema's type with pyarrow's safe
cast (no integer overflow, no float truncation; text becomes a number only where it is one). A
file with a column that does not cast is not a valid file: :class:`CastError` names the file,
the column and both types. A file is judged whole, whichever of its columns a reader asks for
(:func:`drifted` says which columns must be read to judge it).
"""

from __future__ import annotations

import pyarrow as pa


class CastError(ValueError):
    """A column of a file that does not cast to its schema's type."""


def drifted(file_schema: pa.Schema, schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` that a file of ``file_schema`` holds in another type (in the
    file's order); a reader reads them whatever it needs, to judge the file by all of them."""
    return [f.name for f in file_schema
            if f.name in schema.names and f.type != schema.field(f.name).type]


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """``table``'s columns that ``schema`` has, in ``schema``'s order and types, with
    ``schema``'s metadata; columns ``schema`` lacks are dropped, and columns ``table`` lacks
    stay absent (the caller fills them or refuses the file). ``name`` (the file's path or URI)
    goes into the error. Raises :class:`CastError` if a column's values do not cast."""
    if not drifted(table.schema, schema):  # the common case: nothing to cast
        names = [n for n in schema.names if n in table.column_names]
        return table.select(names).replace_schema_metadata(schema.metadata)
    fields, columns = [], []
    for field in schema:
        if field.name not in table.column_names:
            continue
        col = table.column(field.name)
        if col.type != field.type:
            try:
                col = col.cast(field.type, safe=True)
            except pa.ArrowException as e:  # values out of range, unparsable, no such cast
                raise CastError(f"{name}: column {field.name!r} holds {col.type} values that do "
                                f"not cast to its schema's {field.type} ({e})") from None
        fields.append(field)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))
