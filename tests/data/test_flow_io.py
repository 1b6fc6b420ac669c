import cv2
import numpy as np
import pytest

from sdnet_plugin.data.flow_io import FLOW_MAX, FLOW_MIN, decode_flow, encode_flow, read_flow, write_flow


def test_round_trip_precision_and_format(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.uniform(-40, 40, (5, 7, 4)).astype(np.float32)
    flow[0, 0] = [FLOW_MIN, FLOW_MAX, 0, -0.0]
    path = str(tmp_path / 'f.png')
    write_flow(path, flow)
    stored = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and stored.shape == (5, 7, 4)
    assert stored[1, 2, 3] == round(flow[1, 2, 3] * 64) + 32768  # channel order as handed to OpenCV
    restored = read_flow(path)
    assert restored.dtype == np.float32
    assert np.abs(restored - flow).max() <= 1 / 128 + 1e-6
    assert np.array_equal(decode_flow(encode_flow(flow)), restored)


@pytest.mark.parametrize('value', [FLOW_MAX + 0.1, FLOW_MIN - 0.1, np.nan, np.inf])
def test_out_of_range_is_an_error(value):
    flow = np.zeros((2, 2, 4), np.float32)
    flow[1, 1, 2] = value
    with pytest.raises(ValueError):
        encode_flow(flow)


def test_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match=r'\(H, W, 4\)'):
        encode_flow(np.zeros((2, 2, 2), np.float32))


def test_decode_errors_name_the_file(tmp_path):
    data = encode_flow(np.ones((8, 8, 4), np.float32))
    with pytest.raises(IOError, match='broken.png'):
        decode_flow(data[:len(data) // 2], 'broken.png')
    with pytest.raises(IOError, match='empty.png'):
        decode_flow(b'', 'empty.png')
    _, colour = cv2.imencode('.png', np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match='colour.png: not a flow image'):
        decode_flow(colour.tobytes(), 'colour.png')
    with pytest.raises(FileNotFoundError, match='missing.png'):
        read_flow(str(tmp_path / 'missing.png'))
