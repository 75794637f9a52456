"""Admin CRUD for the catalog the dispatcher needs (course contents, members) and for users."""

from fastapi import APIRouter

from gateway.api.auth import GuardedRoute
from gateway.api.routes.crud import crud
from gateway.jobs.catalog_admin import COURSE_CONTENTS, COURSE_MEMBERS, USERS
from gateway.schemas import (
    CourseContentGet,
    CourseContentIn,
    CourseContentPatch,
    CourseMemberGet,
    CourseMemberIn,
    CourseMemberPatch,
    UserGet,
    UserIn,
    UserPatch,
)

router = APIRouter(prefix="/admin", route_class=GuardedRoute)

crud(
    router,
    "/course-contents",
    COURSE_CONTENTS,
    CourseContentIn,
    CourseContentPatch,
    CourseContentGet,
    "course-contents",
)
crud(router, "/course-members", COURSE_MEMBERS, CourseMemberIn, CourseMemberPatch, CourseMemberGet, "course-members")
crud(router, "/users", USERS, UserIn, UserPatch, UserGet, "users")
