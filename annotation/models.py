"""Reading studies, assignments, contour versions and visual assessments live here."""
