"""Purchase histories and event logs in: files, cells, formats and the service's database.

``files`` reads CSV, CSV.gz and Parquet; ``cells`` parses ids, numbers and timestamps;
``formats`` maps columns (generic, Online Retail), cleans and reports; ``database`` reads
what the API ingested. Import each name from the module that owns it.
"""
