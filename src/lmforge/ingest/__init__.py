"""Ingestion: any folder of documents -> clean, deduplicated text records. Imports no torch."""
