"""The user's own images (art_ssni.data.user): an image folder with one sub-folder per class,
and .npz arrays (channels first or last, uint8 scaled to [0, 1]) checked against the model."""

import pytest
import torch


def test_image_folder_data(tmp_path):
    from PIL import Image

    from art_ssni.data.user import load_user_images

    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(3, 8, 8, generator=g) * 255).round().to(torch.uint8)
    for i, name in enumerate(["cat", "ant", "ant"]):
        (tmp_path / name).mkdir(exist_ok=True)
        Image.fromarray(pixels[i].numpy(), mode="L").save(tmp_path / name / f"{i}.png")
    x, y = load_user_images(tmp_path, (1, 8, 8))
    assert y.tolist() == [0, 0, 1]  # classes in sorted order: ant, cat
    assert torch.equal(x[2, 0], pixels[0].float() / 255)
    assert torch.equal(x[0, 0], pixels[1].float() / 255)
    import numpy as np

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 3, 8, 8), dtype="float32"), y=np.zeros(2, dtype="int64"))
    with pytest.raises(ValueError, match="3 channels but the model expects 1"):
        load_user_images(bad, (1, 8, 8))


def test_npz_uint8_images_are_scaled(tmp_path):
    import numpy as np

    from art_ssni.data.user import load_user_images

    pixels = np.arange(2 * 64, dtype="uint8").reshape(2, 1, 8, 8)
    np.savez(tmp_path / "u8.npz", x=pixels, y=np.array([3, 4]))
    x, y = load_user_images(tmp_path / "u8.npz", (1, 8, 8))
    assert torch.equal(x, torch.from_numpy(pixels).float() / 255) and y.tolist() == [3, 4]


def test_numbered_class_folders_keep_their_labels(tmp_path):
    """Folders 0, 1, 4, 5, 8 and 10 are labels 0, 1, 4, 5, 8 and 10, not their sorted
    positions (which would relabel 4 as 2 and sort 10 before 4)."""
    from PIL import Image

    from art_ssni.data.user import load_user_images

    names = ["0", "1", "4", "5", "8", "10"]
    for k, name in enumerate(names):
        (tmp_path / name).mkdir()
        pixels = torch.full((8, 8), 20 * k, dtype=torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(tmp_path / name / "a.png")
    x, y = load_user_images(tmp_path, (1, 8, 8))
    assert y.tolist() == [0, 1, 4, 5, 8, 10]
    assert [round(float(v) * 255 / 20) for v in x[:, 0, 0, 0]] == [0, 1, 2, 3, 4, 5]
