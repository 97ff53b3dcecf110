"""Database backends: Django's, with the changes this project runs with."""
