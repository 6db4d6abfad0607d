"""Distribution files and their PEP 658 metadata: what the file URLs serve."""
