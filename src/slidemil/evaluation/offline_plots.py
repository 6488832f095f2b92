"""An HTML template for `dvc plots show` that carries vega, vega-lite and vega-embed inline.

DVC's default page loads the three libraries from a CDN, so the plots are blank without a network (a
hospital workstation, CI). ``make setup`` runs this module once: it installs the pinned npm packages
(BSD-3-Clause) into ``.dvc/tmp/vega`` and writes ``.dvc/tmp/plots_offline.html``, which ``.dvc/config``
names as ``plots.html_template``. Every ``dvc plots show`` page is then self-contained. Without npm the
template falls back to DVC's CDN scripts (and says so), so ``dvc plots show`` still works online.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: npm package -> (pinned version, the UMD build that defines its global), in load order
PACKAGES: dict[str, tuple[str, str]] = {
    "vega": ("5.33.1", "build/vega.min.js"),
    "vega-lite": ("5.23.0", "build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "build/vega-embed.min.js"),
}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>slidemil: DVC plots</title>
    SCRIPTS
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def install_vega(vendor_dir: Path) -> list[Path]:
    """``npm install`` the pinned packages into ``vendor_dir``; the three script files, in load order."""
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm not found")
    vendor_dir.mkdir(parents=True, exist_ok=True)
    files = [vendor_dir / "node_modules" / name / build for name, (_, build) in PACKAGES.items()]
    if not all(f.is_file() for f in files):
        specs = [f"{name}@{version}" for name, (version, _) in PACKAGES.items()]
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--no-save", "--prefix",
                        str(vendor_dir), *specs], check=True, stdout=subprocess.DEVNULL)
    return files


def template(scripts: list[Path] | None) -> str:
    """The page with each script inline (``</script`` escaped), or DVC's CDN scripts when ``scripts`` is None."""
    if scripts is None:
        tags = "{scripts}"  # DVC fills in its CDN <script> tags
    else:
        tags = "\n".join("<script>" + p.read_text(encoding="utf-8").replace("</script", "<\\/script") + "</script>"
                         for p in scripts)
    return PAGE.replace("SCRIPTS", tags)  # DVC fills {refresh_tag} and {plot_divs} itself


def build(out: Path, vendor_dir: Path) -> bool:
    """Write the template to ``out``; True when the libraries are inline (offline), False for the CDN fallback."""
    try:
        scripts = install_vega(vendor_dir)
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        log.warning("vega not installed (%s): %s uses DVC's CDN scripts and needs a network", exc, out)
        scripts = None
    from slidemil.utils.atomic import write_text_atomic

    write_text_atomic(out, template(scripts))
    return scripts is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dvc-dir", type=Path, default=Path(".dvc"), help="the project's .dvc folder (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.dvc_dir / "tmp" / "plots_offline.html"
    offline = build(out, args.dvc_dir / "tmp" / "vega")
    print(f"wrote {out} ({'vega inline, works offline' if offline else 'CDN scripts, needs a network'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
