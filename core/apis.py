from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.access import projects_for


class MeApi(APIView):
    def get(self, request: Request) -> Response:
        user = request.user
        return Response(
            {
                "username": user.get_username(),
                "role": getattr(user, "role", ""),
                "projects": [
                    {"slug": p.slug, "name": p.name} for p in projects_for(user).order_by("slug")
                ],
            }
        )
