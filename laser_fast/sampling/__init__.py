"""Step 3 (sampling): allocation over strata, embeddings, k-means and greedy selection."""

