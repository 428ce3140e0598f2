/** A pid or an image directory, opened as the processes it names: what every viewing verb takes. */
import { ProcessImage } from "./image_process.ts";
import { Process } from "./process.ts";
import type { ProcessView } from "./view.ts";

/** What `openTarget` opened. */
export interface OpenedTarget extends Disposable {
  /** The live process, or the image's processes (the root first, or the one asked for). */
  processes: ProcessView[];
  /** The image, when the target was one. */
  image?: ProcessImage;
}

/** Options of `openTarget`. */
export interface OpenTargetOptions {
  /** Of an image, only this process (default: every process of it). */
  pid?: number;
  /** Of an image, check every checksum first. */
  verify?: boolean;
}

/** Whether `target` names a process (a pid) rather than an image directory. */
export function isPidTarget(target: string | number): boolean {
  if (typeof target === "number") return true;
  if (!/^[1-9][0-9]*$/.test(target)) return false;
  try {
    return !Deno.statSync(target).isDirectory; // a directory named like a pid is an image
  } catch {
    return true;
  }
}

/**
 * Opens a live process by pid (a number, or a string of digits) or the processes of the image
 * in directory `target`. Dispose of the result to close the image.
 */
export async function openTarget(
  target: string | number,
  opts: OpenTargetOptions = {},
): Promise<OpenedTarget> {
  if (isPidTarget(target)) {
    return { processes: [await Process.open(Number(target))], [Symbol.dispose]() {} };
  }
  const image = await ProcessImage.open(String(target), { verify: opts.verify });
  try {
    const processes = opts.pid === undefined ? image.processes() : [image.process(opts.pid)];
    return { processes, image, [Symbol.dispose]: () => image.close() };
  } catch (err) {
    image.close();
    throw err;
  }
}
