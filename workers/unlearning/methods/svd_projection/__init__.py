"""``svd_projection``: forgetting whole classes by SVD projection of every layer (DESIGN §14.3)."""
