"""Everything that imports pyspark: resources broadcast, UDFs, I/O, ledger, jobs."""
