"""nc: measure neural collapse (Papyan, Han & Donoho, PNAS 2020) in small, exact pieces."""
