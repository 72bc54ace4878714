"""The station: what runs on a line -- the HTTP service and its page (service, web, http_guards), folder
inspection and its result files (inspection, results_csv, results_parquet, manifest), Ray workers
(distributed, ray_workers, ray_cluster), int8 export (quantize), load tests and the browser check.

It imports the core modules below it (anomaly.inference, anomaly.export, anomaly.decoding, ...), never
the study above it.
"""
