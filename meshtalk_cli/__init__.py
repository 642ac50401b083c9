"""The `meshtalk` command line: argument parsing only; the work lives in meshtalk.pipelines."""
