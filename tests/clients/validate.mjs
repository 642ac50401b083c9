// Khronos glTF-Validator on one GLB: prints its report (JSON) on stdout.
//   node validate.mjs FILE.glb
import { readFile } from "node:fs/promises";
import validator from "gltf-validator";

const path = process.argv[2];
const bytes = new Uint8Array(await readFile(path));
const report = await validator.validateBytes(bytes, { maxIssues: 100 });
process.stdout.write(JSON.stringify(report));
