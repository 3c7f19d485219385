"""What the archive's packages share and that belongs to none of them."""
