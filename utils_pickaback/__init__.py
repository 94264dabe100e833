"""The backbone search: ModelDiff profiling, decision distance vectors and similarity (modeldiff), the search of
targets against any candidate networks' task heads and the pick (candidates), the selection rules with the result
files (results), and the search over a dataset config's baselines (backbone_search)."""
