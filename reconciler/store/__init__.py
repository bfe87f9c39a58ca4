"""The state database (SQLite, WAL, synchronous=FULL): connection, ordered
migrations, and the repositories; SQL lives only here. Imports: specs.
"""
