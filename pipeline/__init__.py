"""Extremely large minibatch SGD (Akiba, Suzuki and Fukuda, 2017) as a Snakemake pipeline."""
