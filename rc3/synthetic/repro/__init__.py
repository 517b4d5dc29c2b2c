"""Small-scale reproduction of the paper's claims: job scheduling, result tables, sentence retrieval."""
