"""What the store's runs say: report tables and plots beside the papers' numbers, and the claims audit."""
