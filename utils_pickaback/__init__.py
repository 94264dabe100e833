"""The backbone search: ModelDiff profiling, decision distance vectors and similarity (modeldiff), and backbone
selection with its result files (results)."""
