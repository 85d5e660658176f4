"""Queries, one module per table family. Every function takes a Transaction or Database."""
