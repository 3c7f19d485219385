"""SCIM resources in and out: a member as a SCIM User, a ScimGroup as a SCIM Group, and the
PATCH operations (RFC 7644 section 3.5.2) applied to their current attributes.

Input is read leniently where identity providers differ and strictly where a guess could be
wrong: attribute names and ``op`` are case-insensitive, Microsoft Entra ID's ``"False"`` string
is read as the boolean, core User attributes Strata does not keep (title, phoneNumbers, the
enterprise extension...) are accepted and ignored, and anything else is refused with its
``scimType``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tenants.models import Membership, ScimGroup
from tenants.scim.errors import ScimError, invalid_path, invalid_syntax, invalid_value
from tenants.scim.filters import GROUP_SCHEMA, USER_SCHEMA
from tenants.scim.services import GroupFields, UserFields

ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"

# Core User attributes (RFC 7643 section 4.1) Strata does not keep: accepted, ignored.
_IGNORED_USER_ATTRIBUTES = {
    "displayname",
    "nickname",
    "profileurl",
    "title",
    "usertype",
    "preferredlanguage",
    "locale",
    "timezone",
    "password",
    "emails",
    "phonenumbers",
    "ims",
    "photos",
    "addresses",
    "entitlements",
    "roles",
    "x509certificates",
    "name.formatted",
    "name.middlename",
    "name.honorificprefix",
    "name.honorificsuffix",
    "meta",
    "id",
    "schemas",
}
_ROUTED_USER_ATTRIBUTES = {"username", "externalid", "active", "name.givenname", "name.familyname"}


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --- out -------------------------------------------------------------------------------------


def user_resource(
    membership: Membership,
    *,
    base: str,
    groups: list[ScimGroup],
    last_modified: datetime,
) -> dict[str, Any]:
    user = membership.user
    name = {
        "givenName": user.first_name,
        "familyName": user.last_name,
        "formatted": user.get_full_name(),
    }
    resource: dict[str, Any] = {
        "schemas": [USER_SCHEMA],
        "id": str(membership.scim_id),
        "userName": user.email,
        "name": {k: v for k, v in name.items() if v},
        "displayName": user.get_full_name() or user.email,
        "emails": [{"value": user.email, "type": "work", "primary": True}],
        "active": membership.deactivated_at is None,
        "groups": [
            {
                "value": str(g.scim_id),
                "display": g.display_name,
                "$ref": f"{base}Groups/{g.scim_id}",
            }
            for g in groups
        ],
        "meta": {
            "resourceType": "User",
            "created": iso(membership.created_at),
            "lastModified": iso(last_modified),
            "location": f"{base}Users/{membership.scim_id}",
        },
    }
    if membership.scim_external_id:
        resource["externalId"] = membership.scim_external_id
    return resource


def group_resource(
    group: ScimGroup, *, base: str, members: list[Membership] | None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "schemas": [GROUP_SCHEMA],
        "id": str(group.scim_id),
        "displayName": group.display_name,
        "meta": {
            "resourceType": "Group",
            "created": iso(group.created_at),
            "lastModified": iso(group.updated_at),
            "location": f"{base}Groups/{group.scim_id}",
        },
    }
    if members is not None:
        resource["members"] = [
            {
                "value": str(m.scim_id),
                "display": m.user.email,
                "$ref": f"{base}Users/{m.scim_id}",
            }
            for m in members
        ]
    if group.external_id:
        resource["externalId"] = group.external_id
    return resource


def list_response(resources: list[dict[str, Any]], *, total: int, start: int) -> dict[str, Any]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


# --- in --------------------------------------------------------------------------------------


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_syntax("The body must be a JSON object.")
    return body


def require_schema(body: dict[str, Any], schema: str) -> None:
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas):
        raise invalid_syntax(f'The body must name its schemas, e.g. "schemas": ["{schema}"].')
    known = {schema.lower(), ENTERPRISE_SCHEMA.lower()}
    unknown = [s for s in schemas if s.lower() not in known]
    if unknown:
        raise invalid_value(f"Unknown schema {unknown[0]!r}; this endpoint takes {schema}.")
    if schema.lower() not in {s.lower() for s in schemas}:
        raise invalid_value(f"The body's schemas must include {schema}.")


def _string(value: Any, label: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid_value(f"{label} must be a string.")
    return value


def _boolean(value: Any, label: str) -> bool:
    # Microsoft Entra ID sends booleans in PATCH values as the strings "True" and "False".
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise invalid_value(f"{label} must be true or false.")


def _lower_keys(data: dict[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in data.items()}


def user_fields_from_resource(body: Any, *, current: UserFields | None = None) -> UserFields:
    """POST and PUT: the whole resource. ``active`` absent means unchanged (PUT) or true."""
    data = _require_object(body)
    require_schema(data, USER_SCHEMA)
    values = _lower_keys(data)
    if not values.get("username"):
        raise invalid_value("userName is required.")
    name = values.get("name")
    if name is not None and not isinstance(name, dict):
        raise invalid_value("name must be an object.")
    name_values = _lower_keys(name or {})
    active = values.get("active")
    return UserFields(
        user_name=_string(values.get("username"), "userName"),
        given_name=_string(name_values.get("givenname"), "name.givenName"),
        family_name=_string(name_values.get("familyname"), "name.familyName"),
        external_id=_string(values.get("externalid"), "externalId"),
        active=(
            _boolean(active, "active")
            if active is not None
            else (current.active if current is not None else True)
        ),
    )


def _strip_schema(path: str) -> str:
    for schema in (USER_SCHEMA, GROUP_SCHEMA):
        if path.lower().startswith(schema.lower() + ":"):
            return path[len(schema) + 1 :]
    return path


def _operations(body: Any) -> list[tuple[str, str | None, Any]]:
    data = _require_object(body)
    require_schema(data, PATCH_SCHEMA)
    operations = _lower_keys(data).get("operations")
    if not isinstance(operations, list) or not operations:
        raise invalid_syntax('A PATCH body needs a non-empty "Operations" list.')
    if len(operations) > 1000:
        raise invalid_syntax("At most 1,000 operations per request.")
    out: list[tuple[str, str | None, Any]] = []
    for number, operation in enumerate(operations, start=1):
        if not isinstance(operation, dict):
            raise invalid_syntax(f"Operation {number} is not an object.")
        fields = _lower_keys(operation)
        op = fields.get("op")
        if not isinstance(op, str) or op.lower() not in ("add", "remove", "replace"):
            raise invalid_syntax(
                f'Operation {number}: "op" must be add, remove or replace, not {op!r}.'
            )
        path = fields.get("path")
        if path is not None and (not isinstance(path, str) or not path.strip()):
            raise invalid_path(f'Operation {number}: "path" must be a non-empty string.')
        if op.lower() == "remove" and path is None:
            raise ScimError(400, f'Operation {number}: remove needs a "path".', "noTarget")
        if op.lower() != "remove" and "value" not in fields:
            raise invalid_value(f'Operation {number}: {op} needs a "value".')
        out.append((op.lower(), _strip_schema(path.strip()) if path else None, fields.get("value")))
    return out


def _user_set(state: dict[str, Any], op: str, path: str, value: Any) -> None:
    key = path.lower()
    if key.startswith(ENTERPRISE_SCHEMA.lower()):
        return
    root = re.split(r"[.\[]", key, maxsplit=1)[0]
    if key == "name":
        if op == "remove":
            state["name.givenname"] = state["name.familyname"] = ""
            return
        if not isinstance(value, dict):
            raise invalid_value("name must be an object.")
        for sub, sub_value in _lower_keys(value).items():
            _user_set(state, op, f"name.{sub}", sub_value)
        return
    if key in _ROUTED_USER_ATTRIBUTES:
        if op == "remove":
            if key in ("username", "active"):
                raise invalid_value(f"{path} cannot be removed.")
            state[key] = ""
        elif key == "active":
            state[key] = _boolean(value, "active")
        else:
            state[key] = _string(value, path)
        return
    if key in _IGNORED_USER_ATTRIBUTES or root in _IGNORED_USER_ATTRIBUTES:
        return
    raise invalid_path(f"The User resource has no attribute {path!r}.")


def user_fields_after_patch(body: Any, *, current: UserFields) -> UserFields:
    state: dict[str, Any] = {
        "username": current.user_name,
        "name.givenname": current.given_name,
        "name.familyname": current.family_name,
        "externalid": current.external_id,
        "active": current.active,
    }
    for op, path, value in _operations(body):
        if path is None:
            if not isinstance(value, dict):
                raise invalid_value(f"{op} without a path needs an object of attributes as value.")
            for key, sub_value in value.items():
                _user_set(state, op, _strip_schema(str(key)), sub_value)
        else:
            _user_set(state, op, path, value)
    return UserFields(
        user_name=state["username"],
        given_name=state["name.givenname"],
        family_name=state["name.familyname"],
        external_id=state["externalid"],
        active=state["active"],
    )


def _member_ids(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(_lower_keys(item).get("value"), str):
            raise invalid_value('members must be a list of objects with a "value" (a User id).')
        out.append(_canonical_id(_lower_keys(item)["value"]))
    return out


def _canonical_id(value: str) -> str:
    # Ids are UUIDs; an identity provider may write one in upper case.
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


def group_fields_from_resource(
    body: Any, *, resolve: Callable[[list[str]], list[Membership]]
) -> GroupFields:
    data = _require_object(body)
    require_schema(data, GROUP_SCHEMA)
    values = _lower_keys(data)
    if not values.get("displayname"):
        raise invalid_value("displayName is required.")
    members = values.get("members")
    return GroupFields(
        display_name=_string(values.get("displayname"), "displayName"),
        external_id=_string(values.get("externalid"), "externalId"),
        members=resolve(_member_ids(members)) if members is not None else [],
    )


_MEMBER_FILTER = re.compile(r'^members\[\s*value\s+eq\s+"([^"]*)"\s*\]$', re.IGNORECASE)


def group_fields_after_patch(
    body: Any,
    *,
    current: GroupFields,
    current_ids: list[str],
    resolve: Callable[[list[str]], list[Membership]],
) -> GroupFields:
    name = current.display_name
    external_id = current.external_id
    ids = list(current_ids)
    members_touched = False

    def apply(op: str, path: str, value: Any) -> None:
        nonlocal name, external_id, ids, members_touched
        key = path.lower()
        if key == "displayname":
            if op == "remove":
                raise invalid_value("displayName cannot be removed.")
            name = _string(value, "displayName")
        elif key == "externalid":
            external_id = "" if op == "remove" else _string(value, "externalId")
        elif key == "members":
            members_touched = True
            if op == "remove":
                if value is None:
                    ids = []
                else:
                    gone = set(_member_ids(value))
                    ids = [i for i in ids if i not in gone]
            elif op == "add":
                ids = ids + [i for i in _member_ids(value) if i not in ids]
            else:
                ids = _member_ids(value) if value else []
        elif key in ("id", "schemas", "meta") and op == "replace":
            # Okta sends the whole group as a replace value, id included; it does not change.
            return
        elif (match := _MEMBER_FILTER.match(path)) is not None:
            if op != "remove":
                raise invalid_path(f"{path!r} can only be removed.")
            members_touched = True
            ids = [i for i in ids if i != _canonical_id(match.group(1))]
        else:
            raise invalid_path(f"The Group resource has no attribute {path!r}.")

    for op, path, value in _operations(body):
        if path is None:
            if not isinstance(value, dict):
                raise invalid_value(f"{op} without a path needs an object of attributes as value.")
            for key, sub_value in value.items():
                apply(op, _strip_schema(str(key)), sub_value)
        else:
            apply(op, path, value)
    return GroupFields(
        display_name=name,
        external_id=external_id,
        members=resolve(ids) if members_touched else None,
    )
