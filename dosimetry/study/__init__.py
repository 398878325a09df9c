"""The study: manifest model, ingestion from scanner exports, loading its images."""
