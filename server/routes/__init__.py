"""HTTP routes, one module per resource: benchmarks, jobs, system."""
