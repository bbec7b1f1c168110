/**
 * A short OpenAPI 3.1 description of the endpoint, served at `/api/openapi.json`.
 *
 * @module
 */
import { LIMITS, PRECISIONS, SAMPLERS } from "./params.ts";

const params = {
  type: "object",
  additionalProperties: false,
  properties: {
    prompt: {
      type: "string",
      maxLength: LIMITS.prompt,
      description: "a class name or words of one",
    },
    class: { type: "integer", minimum: 0, description: "class id (wins over prompt)" },
    seed: { type: "integer", minimum: LIMITS.seed[0], maximum: LIMITS.seed[1] },
    steps: { type: "integer", minimum: LIMITS.steps[0], maximum: LIMITS.steps[1], default: 20 },
    cfg: { type: "number", minimum: LIMITS.cfg[0], maximum: LIMITS.cfg[1], default: 4 },
    precision: { type: "string", enum: [...PRECISIONS] },
    sampler: { type: "string", enum: [...SAMPLERS], default: "dpm" },
    model: {
      type: "string",
      pattern: "^[a-z0-9][a-z0-9._-]{0,63}$",
      description:
        "an id from /api/models (e.g. dit-emoji-int4-sparse: the int4 model with sparse + INT8 attention)",
    },
    key: {
      type: "string",
      pattern: "^[\\x21-\\x7e]{1,128}$",
      description:
        "idempotency key (as the Idempotency-Key header; for the SSE route): with serve --nats, the same key (per caller) returns the same image",
    },
  },
};
const error = {
  description: "error",
  content: {
    "application/json": {
      schema: {
        type: "object",
        properties: { error: { type: "string" }, field: { type: "string" } },
      },
    },
  },
};

/** The OpenAPI document. */
export const OPENAPI = {
  openapi: "3.1.0",
  info: { title: "w4 diffusion endpoint", version: "0.1.0" },
  paths: {
    "/api/generate": {
      post: {
        summary: "Generate one image",
        parameters: [{
          name: "Idempotency-Key",
          in: "header",
          required: false,
          description: "with serve --nats: the same key (per caller) returns the same image",
        }],
        requestBody: { content: { "application/json": { schema: params } } },
        responses: {
          "200": {
            description:
              "the PNG; X-Seed, X-Steps, X-Class, X-Model, X-Precision, X-Total-Ms, X-Step-Ms " +
              "headers; X-Prompt-Truncated (clip, t5 or clip,t5) and X-Prompt-Warning when the " +
              "prompt was cut to the text encoders' token limits",
            content: { "image/png": {} },
          },
          "400": error,
          "401": error,
          "413": error,
          "422": { ...error, description: "Idempotency-Key reused for another request" },
          "429": { ...error, description: "queue full; see Retry-After" },
          "503": error,
          "504": error,
        },
      },
    },
    "/api/generate/stream": {
      get: {
        summary:
          "Generate with progress as Server-Sent Events: queued {position}, step {i, n, preview?}, done {image, ...}, error {message, status}; with serve --nats also retry {attempt} (the job was redelivered)",
        parameters: Object.keys(params.properties).concat("preview").map((name) => ({
          name,
          in: "query",
        })),
        responses: {
          "200": { description: "event stream", content: { "text/event-stream": {} } },
          "400": error,
          "429": error,
        },
      },
    },
    "/api/models": {
      get: {
        summary: "Served models: id, precision, attention (dense or sparse), classes, size",
        responses: { "200": { description: "models" } },
      },
    },
    "/models": {
      get: {
        summary: "Model files for on-device generation: id, url, bytes, checksum, ETag, model " +
          "info, what a WebGPU adapter needs (when the server serves them)",
        responses: { "200": { description: "model files" } },
      },
    },
    "/models/{id}": {
      get: {
        summary: "One registry model file (ids only); Range → 206, bad range → 416, ETag, " +
          "If-Range, If-None-Match → 304",
        parameters: [{ name: "id", in: "path", required: true, schema: { type: "string" } }],
        responses: {
          "200": { description: "the file" },
          "206": { description: "a range" },
          "304": { description: "not modified" },
          "404": { description: "no such id" },
          "416": { description: "bad range" },
        },
      },
    },
    "/healthz": {
      get: {
        summary: "ready, device, model, queue",
        responses: { "200": { description: "ready" }, "503": { description: "not ready" } },
      },
    },
  },
};
