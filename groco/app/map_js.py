"""The Map tab's browser side: a thumbnail under the pointer, and a box dragged on the map.

:data:`MAP_JS` runs once the tab's overlay (a ``gr.HTML`` holding the tooltip and the box)
is mounted (Gradio's ``js_on_load``: ``element``, ``server`` and ``trigger`` are given).
It listens on the document, so a redrawn map picture (another colouring) keeps working:

- *hover*: the pointer's position over ``#map-image img``, in the picture's own pixels
  (Gradio's formula for its click: the image scaled by ``min(w / W, h / H, 1)`` and
  centred), goes to ``server.hover([x, y])``; at most one call is in flight and only the
  latest position is sent next, so a fast pointer never queues stale requests. The
  answer (the nearest drawn item within a few pixels, or ``null``) fills the tooltip:
  the item's cached thumbnail (a URL the app serves) and its path.
- *box*: a press and a drag of more than :data:`DRAG_PX` pixels draws a rectangle; on
  release its corners in picture pixels go to the server as the overlay's ``submit``
  event (``{box: [x0, y0, x1, y1]}``), and the click that the release would also fire
  is swallowed, so a box never starts a "more like this". A plain click is left alone.

The server never sends the points to the browser: the picture is drawn on the server.
"""

from __future__ import annotations

DRAG_PX = 5
"""Pointer travel (CSS pixels) past which a press is a box, not a click."""

MAP_HTML = (
    '<div class="groco-map-tip" id="map-tip" style="display:none">'
    '<img id="map-tip-img" alt=""><div class="groco-map-tip-caption" id="map-tip-caption">'
    "</div></div>"
    '<div class="groco-map-box" id="map-box" style="display:none"></div>'
)

MAP_CSS = """
.groco-map-tip { position: fixed; z-index: 1000; pointer-events: none; background: white;
  border: 1px solid #888; border-radius: 4px; padding: 4px; box-shadow: 0 2px 8px #0004;
  max-width: 140px; }
.groco-map-tip img { display: block; width: 128px; height: 128px; object-fit: contain; }
.groco-map-tip-caption { font-size: 11px; color: #222; word-break: break-all; }
.groco-map-box { position: fixed; z-index: 999; pointer-events: none;
  border: 1px dashed #d62728; background: #d6272822; }
"""

MAP_JS = """
window.__grocoMap = {element, server, trigger};
if (!window.__grocoMapInstalled) {
  window.__grocoMapInstalled = true;
  const DRAG = __DRAG__;
  const g = () => window.__grocoMap;
  const part = (id) => g().element.querySelector('#' + id);
  const mapImg = (node) => {
    const host = node && node.closest ? node.closest('#map-image') : null;
    const img = host ? host.querySelector('img') : null;
    return img && img.naturalWidth ? img : null;
  };
  const toPixels = (img, cx, cy) => {
    const r = img.getBoundingClientRect();
    const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
    const ox = (r.width - img.naturalWidth * s) / 2, oy = (r.height - img.naturalHeight * s) / 2;
    return [(cx - r.left - ox) / s, (cy - r.top - oy) / s];
  };
  let drag = null, swallow = false, pending = null, busy = false, over = false;
  const hide = () => { const tip = part('map-tip'); if (tip) { tip.style.display = 'none';
                                                             delete tip.dataset.item; } };
  const show = (hit, p) => {
    const tip = part('map-tip');
    if (!tip) return;
    if (!hit || !over || drag) { hide(); return; }
    part('map-tip-img').src = hit.thumbnail || '';
    part('map-tip-caption').textContent = hit.caption;
    tip.dataset.item = String(hit.id);
    tip.style.left = Math.min(p.cx + 14, window.innerWidth - 150) + 'px';
    tip.style.top = Math.min(p.cy + 14, window.innerHeight - 180) + 'px';
    tip.style.display = 'block';
  };
  const hover = async () => {
    if (busy || !pending) return;
    const p = pending;
    pending = null;
    busy = true;
    try { show(await g().server.hover([p.x, p.y]), p); } catch (e) { hide(); }
    busy = false;
    if (pending) hover();
  };
  document.addEventListener('mousemove', (e) => {
    const img = drag ? drag.img : mapImg(e.target);
    over = !!img && !drag;
    if (!img) { pending = null; hide(); return; }
    if (drag) {
      const dx = e.clientX - drag.cx, dy = e.clientY - drag.cy;
      if (!drag.moved && Math.hypot(dx, dy) < DRAG) return;
      drag.moved = true;
      hide();
      const box = part('map-box');
      box.style.left = Math.min(e.clientX, drag.cx) + 'px';
      box.style.top = Math.min(e.clientY, drag.cy) + 'px';
      box.style.width = Math.abs(dx) + 'px';
      box.style.height = Math.abs(dy) + 'px';
      box.style.display = 'block';
      return;
    }
    const [x, y] = toPixels(img, e.clientX, e.clientY);
    pending = {x, y, cx: e.clientX, cy: e.clientY};
    hover();
  }, true);
  document.addEventListener('mousedown', (e) => {
    const img = mapImg(e.target);
    if (!img || e.button !== 0) return;
    e.preventDefault();  // no native image drag
    drag = {img, cx: e.clientX, cy: e.clientY, moved: false};
  }, true);
  document.addEventListener('mouseup', (e) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    const box = part('map-box');
    if (box) box.style.display = 'none';
    if (!d.moved) return;
    swallow = true;
    setTimeout(() => { swallow = false; }, 400);
    const [x0, y0] = toPixels(d.img, d.cx, d.cy);
    const [x1, y1] = toPixels(d.img, e.clientX, e.clientY);
    g().trigger('submit', {box: [Math.min(x0, x1), Math.min(y0, y1),
                                 Math.max(x0, x1), Math.max(y0, y1)]});
  }, true);
  document.addEventListener('click', (e) => {
    if (swallow) { swallow = false; e.stopPropagation(); e.preventDefault(); }
  }, true);
}
""".replace("__DRAG__", str(DRAG_PX))
