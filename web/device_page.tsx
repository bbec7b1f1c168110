/**
 * The page's "generate on this device" part (server-rendered, hidden controls that
 * web/device_client.ts reveals when the browser's WebGPU adapter can run the model): a button
 * next to the server's, cancel, a download progress bar, the canvas with live previews, and the
 * timings.
 *
 * @module
 */

/** Styles of the device section. */
export const DEVICE_CSS =
  `#device canvas{image-rendering:pixelated;width:256px;height:256px;background:#eee}` +
  `#device-timings{font-size:.85rem;color:#555}`;

/** The device section: everything starts hidden except the status line. */
export function DeviceSection() {
  return (
    <section id="device">
      <h2>On this device</h2>
      <p id="device-status" role="status">Checking this browser's WebGPU…</p>
      <p>
        <button id="go-device" type="button" hidden>Generate on this device</button>{" "}
        <button id="cancel-device" type="button" hidden>Cancel</button>
      </p>
      <progress id="device-progress" max="1" value="0" hidden />
      <div>
        <canvas id="device-canvas" width="32" height="32" hidden />
      </div>
      <p id="device-timings"></p>
    </section>
  );
}
