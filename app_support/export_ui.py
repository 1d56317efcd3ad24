"""The "Download model" control: a run's model exported (SavedModel, TFLite or ONNX) with its JSON sidecar, as
one zip file (genre_core.evaluation.export does the work)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import streamlit as st

from app_support import core
from genre_core.evaluation import export

FORMAT_LABELS = {"saved_model": "TensorFlow SavedModel", "tflite": "TFLite (LiteRT)", "onnx": "ONNX"}
OUT_NAMES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}


@st.cache_data(show_spinner=False, max_entries=4)
def _export_zip(run_dir: str, format_name: str, stamp: float) -> bytes:
    """Export the run's model into a temporary folder and return it zipped with its sidecar (cached per model file)."""
    with tempfile.TemporaryDirectory(prefix="genre-export-") as folder:
        out = Path(folder) / OUT_NAMES[format_name]
        export.export_run(run_dir, format_name, out)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
        return buffer.getvalue()


def download_model(run_dir: str | Path) -> None:
    """An expander to export the run's model in a chosen format and download it as a zip."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.keras").exists():
        return
    with st.expander("Download model", icon=":material/download:"):
        st.caption("The exported graph takes RGB pixels 0..255 at the run's size and does its own preprocessing; "
                   "the JSON sidecar names the classes, the input size and the resize policy.")
        columns = st.columns([2, 1])
        format_name = columns[0].selectbox("Format", list(FORMAT_LABELS), format_func=FORMAT_LABELS.get,
                                           key="export_format")
        if columns[1].button("Prepare download", key="export_prepare", icon=":material/build:"):
            stamp = core.modification_time(run_dir / "model.keras")
            try:
                with st.spinner(f"Exporting {FORMAT_LABELS[format_name]}..."):
                    data = _export_zip(str(run_dir), format_name, stamp)
            except Exception as exc:  # noqa: BLE001 - one line, and the rest of the page stays
                st.error(f"Cannot export {FORMAT_LABELS[format_name]}: {core.describe_error(exc)}")
                return
            st.download_button(f"Download {FORMAT_LABELS[format_name]} (.zip, {len(data) / 1e6:.1f} MB)", data,
                               file_name=f"{run_dir.name}-{format_name}.zip", mime="application/zip",
                               key="export_download", on_click="ignore", icon=":material/download:")
