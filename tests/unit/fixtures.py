"""
Apikley answers as the contract documents them, in one place so they can be corrected in one place.
"""

from __future__ import annotations

import json
from typing import Any

TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
IMAGE_URL = "https://files.example.org/in/shoe.png"
RESULT_URL = "https://files.example.org/out/shoe-edited.png"


def envelope(data: Any = None, code: int = 200, msg: str = "success") -> dict[str, Any]:
    """The JSON envelope every Apikley answer uses."""
    return {"code": code, "msg": msg, "data": data}


def created(task_id: str = TASK_ID) -> dict[str, Any]:
    """A createTask answer."""
    return envelope({"taskId": task_id, "recordId": task_id})


def record(
    state: str,
    task_id: str = TASK_ID,
    result_urls: list[str] | None = None,
    fail_code: str = "",
    fail_msg: str = "",
    input: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A recordInfo answer for a task in ``state``."""
    param = {"model": "qwen/image-to-image", "input": input or {"prompt": "sepia", "image_url": IMAGE_URL}}
    return envelope(
        {
            "taskId": task_id,
            "model": "qwen/image-to-image",
            "state": state,
            "param": json.dumps(param),
            "resultJson": json.dumps({"resultUrls": result_urls or [RESULT_URL]}) if state == "success" else "",
            "failCode": fail_code,
            "failMsg": fail_msg,
            "costTime": 15000,
            "createTime": 1698765400000,
            "updateTime": 1698765432000,
            "completeTime": 1698765432000 if state in ("success", "fail") else None,
        }
    )
