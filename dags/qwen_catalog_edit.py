"""
Restyle a product catalog's photos with Qwen image-to-image, from catalog to published manifest.

1. ``build_catalog`` reads the catalog: here it draws six product images so the DAG runs
   anywhere; in production it would list a bucket or query a table.
2. ``upload_images`` uploads each source image to Apikley, which needs a URL it can fetch.
3. ``edit`` runs one mapped, deferrable edit per product: it submits the task, waits in the
   triggerer (no worker slot held while the model renders) and copies the result into
   ``output_uri`` before the result URL expires.
4. ``publish`` writes ``manifest.json`` (source, prompt, seed, Apikley task id, stored URI,
   sha256 and credits consumed per product, and the credits of the whole run) and
   ``contact_sheet.png``, a before/after grid to look at.

Run it on the local emulator with ``make demo``; against the real Apikley, only the
``apikley_default`` connection changes.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, ObjectStoragePath, Param, task

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

DEFAULT_OUTPUT_URI = os.environ.get("QWEN_CATALOG_OUTPUT_URI", "file:///tmp/qwen_catalog_edit")

#: (sku, product name, background colour, product colour, prompt, seed, strength)
CATALOG = [
    ("SKU-001", "Canvas sneaker", "#dfe7ef", "#c0392b", "vintage sepia catalog photo", 11, 0.7),
    ("SKU-002", "Travel mug", "#f3efe6", "#2c7fb8", "black and white studio shot", 12, 0.9),
    ("SKU-003", "Desk lamp", "#eef3e9", "#f1c40f", "warm golden hour light", 13, 0.6),
    ("SKU-004", "Backpack", "#e9e6f2", "#27ae60", "cool winter tones", 14, 0.6),
    ("SKU-005", "Headphones", "#f5e8e8", "#34495e", "soft dreamy blur", 15, 0.5),
    ("SKU-006", "Water bottle", "#e8f4f5", "#8e44ad", "bold posterized pop art", 16, 0.8),
]

with DAG(
    dag_id="qwen_catalog_edit",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={"output_uri": Param(DEFAULT_OUTPUT_URI, type="string", description="Where results are published")},
    tags=["example", "qwen", "apikley"],
    doc_md=__doc__,
):

    @task
    def build_catalog(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Draw one source image per product into ``<output_uri>/source``; return the catalog."""
        from airflow_provider_qwen.demo.images import draw_product

        source = ObjectStoragePath(params["output_uri"]) / "source"
        source.mkdir(parents=True, exist_ok=True)
        catalog = []
        for sku, name, background, colour, prompt, seed, strength in CATALOG:
            path = source / f"{sku}.png"
            path.write_bytes(draw_product(name, background, colour))
            catalog.append(
                {"sku": sku, "name": name, "source": str(path), "prompt": prompt, "seed": seed, "strength": strength}
            )
        return catalog

    @task
    def upload_images(catalog: list[dict[str, Any]], run_id: str | None = None) -> list[dict[str, Any]]:
        """Upload each source image; Apikley edits images it can fetch by URL."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        hook = ApikleyHook()
        folder = "catalog/" + "".join(char if char.isalnum() else "-" for char in run_id or "manual")
        return [
            {
                **item,
                "image_url": hook.upload_file(
                    ObjectStoragePath(item["source"]).read_bytes(), folder, f"{item['sku']}.png"
                ),
            }
            for item in catalog
        ]

    def edit_arguments(item: dict[str, Any]) -> dict[str, Any]:
        return {key: item[key] for key in ("image_url", "prompt", "seed", "strength")}

    uploaded = upload_images(build_catalog())
    edits = QwenImageToImageOperator.partial(
        task_id="edit",
        output_format="png",
        output_path="{{ params.output_uri }}/edited",
        deferrable=True,
        # A retry resumes the Apikley task its try submitted (Airflow 3.3), so retrying never pays twice.
        retries=2,
        retry_delay=timedelta(seconds=2),
    ).expand_kwargs(uploaded.map(edit_arguments))

    @task
    def publish(
        catalog: list[dict[str, Any]], edits: list[dict[str, Any]], params: dict[str, Any] | None = None
    ) -> str:
        """Write ``manifest.json`` and ``contact_sheet.png``; return the manifest's URI."""
        from airflow_provider_qwen.demo.images import contact_sheet

        # Index rather than iterate: iterating a mapped task's results probes one past the end.
        by_image_url = {edits[index]["input"]["image_url"]: edits[index] for index in range(len(edits))}
        entries = []
        for item in catalog:
            edit = by_image_url[item["image_url"]]
            (stored,) = edit["stored"]
            entries.append(
                {
                    "sku": item["sku"],
                    "name": item["name"],
                    "source": item["source"],
                    "prompt": item["prompt"],
                    "seed": item["seed"],
                    "strength": item["strength"],
                    "apikley_task_id": edit["apikley_task_id"],
                    "stored_uri": stored["uri"],
                    "sha256": stored["sha256"],
                    "size": stored["size"],
                    "credits_consumed": edit["credits_consumed"],
                }
            )
        output = ObjectStoragePath(params["output_uri"])
        sheet = output / "contact_sheet.png"
        sheet.write_bytes(
            contact_sheet(
                [
                    (
                        entry["name"],
                        entry["prompt"],
                        ObjectStoragePath(entry["source"]).read_bytes(),
                        ObjectStoragePath(entry["stored_uri"]).read_bytes(),
                    )
                    for entry in entries
                ]
            )
        )
        manifest = output / "manifest.json"
        spent = sum(entry["credits_consumed"] or 0 for entry in entries)
        manifest.write_text(
            json.dumps({"items": entries, "credits_consumed": spent, "contact_sheet": str(sheet)}, indent=2)
        )
        return str(manifest)

    publish(uploaded, edits.output)
