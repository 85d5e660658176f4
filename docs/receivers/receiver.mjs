// A company's receiver for signback's events, in Node, verified with `standardwebhooks`.
//
//     npm install            (in this folder: package.json names standardwebhooks)
//     SIGNBACK_WEBHOOK_SECRET=whsec_… PORT=9000 node receiver.mjs
//
// It verifies the signature over the raw body (never over re-encoded JSON), refuses
// anything older or newer than five minutes, answers quickly, and handles each webhook-id
// once: signback delivers at least once, and a retry or a replay keeps its webhook-id.
import http from "node:http";
import { Webhook } from "standardwebhooks";

const secret = process.env.SIGNBACK_WEBHOOK_SECRET;
if (!secret) {
  console.error("set SIGNBACK_WEBHOOK_SECRET to the endpoint's secret (whsec_…)");
  process.exit(1);
}
const webhook = new Webhook(secret);
const seen = new Set(); // a real receiver keeps this in its database, with the work
const MAX_BODY = 1024 * 1024;

function handle(event) {
  // Your business: here, one line per event.
  const request = event.data.request ?? {};
  console.log(JSON.stringify({
    type: event.type,
    event: event.id,
    request: request.id ?? null,
    reference: request.reference ?? null,
    state: request.state ?? null,
  }));
}

const server = http.createServer((req, res) => {
  if (req.method !== "POST") {
    res.writeHead(405).end();
    return;
  }
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      res.writeHead(413).end();
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    let event;
    try {
      event = webhook.verify(body, req.headers); // headers arrive lower-cased
    } catch (err) {
      console.log(`refused: ${err.message}`);
      res.writeHead(400).end();
      return;
    }
    const id = req.headers["webhook-id"];
    if (!seen.has(id)) {
      seen.add(id);
      handle(event);
    }
    res.writeHead(204).end();
  });
});

const port = Number(process.env.PORT ?? 9000);
server.listen(port, "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${port}`));
