"""Everything that reads or writes user files: ingest, score files, outputs, the report."""

