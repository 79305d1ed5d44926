"""POST one negative to a running service and check a PNG comes back (scripts/check_docker.sh)."""

import sys
import urllib.request
import uuid

import numpy as np

from shared.io import decode_image, encode_png

base = sys.argv[1]
yy, xx = np.mgrid[0:96, 0:96]
mask = (yy - 48) ** 2 + (xx - 40) ** 2 <= 12**2
image = (0.3 + 0.4 * mask + 0.05 * np.sin(xx / 5)).astype(np.float32)
boundary = uuid.uuid4().hex
body = b"".join(
    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
    for name, data in (("image", encode_png(image)), ("mask", encode_png(mask)))
) + f"--{boundary}--\r\n".encode()
req = urllib.request.Request(f"{base}/negatives", data=body, method="POST", headers={
    "Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": "image/png"})
with urllib.request.urlopen(req, timeout=300) as r:
    png = r.read()
    negative = decode_image(png)
    assert r.status == 200 and negative.shape == image.shape, (r.status, negative.shape)
    print(f"one negative: {len(png)} bytes, id {r.headers['X-Negative-Id'][:12]}, "
          f"mean change inside the mask {float(np.abs(negative - image)[mask].mean()):.3f}")
