/**
 * `deno task repl`: an interactive TypeScript shell with the SDK and helpers in scope. Also
 * `deno run -A main.ts repl`.
 * @module
 */
import { startRepl } from "./server.ts";

if (import.meta.main) Deno.exit(await startRepl());
