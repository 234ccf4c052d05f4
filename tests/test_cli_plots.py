"""Every method of ``minissl list`` trains from ``minissl pretrain`` WITH its plots: one tiny
epoch on the built-in data of its kind, then every picture the run promises is a PNG file
(the plots run after training, on the test split, so a method whose reconstruction or
sampling path the plots call wrongly fails here and nowhere else)."""
import pytest

from minissl import cli, methods

mpl = pytest.importorskip("matplotlib")

DATA = {"images": "digits", "audio": "audio", "video": "moving_shapes", "text": "text",
        "series": "ar"}
OWN_DATA = {"colorization": "shapes", "inpainting": "shapes"}   # RGB images
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_pretrain_with_plots(name, tmp_path, capsys):
    data = OWN_DATA.get(name, DATA[methods.METHODS[name][3]])
    out = tmp_path / name
    rc = cli.main(["pretrain", name, "--data", data, "--epochs", "1", "--limit", "16",
                   "--batch-size", "16", "--no-progress", "--seed", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    written = sorted(p.name for p in out.glob("*.png"))
    assert "loss.png" in written, written
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC, p
