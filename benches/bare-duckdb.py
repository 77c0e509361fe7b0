"""Runs statements on bare DuckDB (PyPI's build, which carries ICU for time zones) over the
warehouse's Parquet files, one after another, and prints the milliseconds each group took.

Usage: python3 bare-duckdb.py WAREHOUSE_DIR GROUPS.json
GROUPS.json is a list of lists of SQL statements (one list per page of a dashboard); prints one
line per group: the total milliseconds and the rows answered (fetched as Python rows: a
dashboard's answers are a few dozen rows, so the conversion costs next to nothing). Each table is a view over the files
of its newest Delta version, read from its log (JSON commits after the last checkpoint).
"""

import json
import os
import sys
import time
import urllib.parse

import duckdb

DUCK_TYPES = {"date": "DATE", "string": "VARCHAR", "integer": "INTEGER", "long": "BIGINT",
              "timestamp": "TIMESTAMPTZ", "timestamp_ntz": "TIMESTAMP", "boolean": "BOOLEAN"}


def live_files(table_dir, conn):
    """The table's current data files and its partition columns' DuckDB types."""
    log = os.path.join(table_dir, "_delta_log")
    files, partitions, start = set(), {}, -1
    last = os.path.join(log, "_last_checkpoint")
    if os.path.exists(last):
        start = json.load(open(last))["version"]
        checkpoint = os.path.join(log, f"{start:020d}.checkpoint.parquet")
        rows = conn.execute(
            "SELECT add.path, remove.path, metaData.schemaString, metaData.partitionColumns "
            "FROM read_parquet(?)", [checkpoint]).fetchall()
        for added, removed, schema, columns in rows:
            if added:
                files.add(added)
            if removed:
                files.discard(removed)
            if schema:
                partitions = partition_types(schema, columns)
    commits = sorted(f for f in os.listdir(log) if f.endswith(".json") and int(f[:20]) > start)
    for commit in commits:
        for line in open(os.path.join(log, commit)):
            action = json.loads(line)
            if "add" in action:
                files.add(action["add"]["path"])
            elif "remove" in action:
                files.discard(action["remove"]["path"])
            elif "metaData" in action:
                meta = action["metaData"]
                partitions = partition_types(meta["schemaString"], meta["partitionColumns"])
    paths = [os.path.join(table_dir, urllib.parse.unquote(f)) for f in sorted(files)]
    return paths, partitions


def partition_types(schema_string, columns):
    fields = {f["name"]: f["type"] for f in json.loads(schema_string)["fields"]}
    return {c: DUCK_TYPES.get(fields.get(c), "VARCHAR") for c in columns}


def main():
    warehouse, groups_file = sys.argv[1], sys.argv[2]
    conn = duckdb.connect()
    for schema in sorted(os.listdir(warehouse)):
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for table in sorted(os.listdir(os.path.join(warehouse, schema))):
            table_dir = os.path.join(warehouse, schema, table)
            if not os.path.isdir(os.path.join(table_dir, "_delta_log")):
                continue
            files, partitions = live_files(table_dir, conn)
            if not files:
                continue
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            hive = ""
            if partitions:
                types = ", ".join(f"'{c}': {t}" for c, t in partitions.items())
                hive = f", hive_partitioning = true, hive_types = {{{types}}}"
            conn.execute(f'CREATE VIEW {schema}."{table}" AS SELECT * FROM '
                         f'read_parquet([{listed}], union_by_name = true{hive})')
    for group in json.load(open(groups_file)):
        started, rows = time.perf_counter(), 0
        for statement in group:
            rows += len(conn.execute(statement).fetchall())
        print(f"{(time.perf_counter() - started) * 1000:.2f} {rows}")


if __name__ == "__main__":
    main()
