// A Slack-like Express 4 app with Express's defaults: routes match case-insensitively and without strict trailing
// slashes, and a key sent twice in a query or a urlencoded form arrives as a list. Each handler reads a list the way
// real handlers do: chat.postMessage takes the last value (as PHP and Rails would), chat.postEphemeral the first (as
// Go's FormValue and Flask would), reactions.add acts on every one.
// Usage: node router.js PORT. GET /_actions (sent directly, not through the proxy) lists what it did.
const express = require("express");

const app = express();
const actions = [];
app.use(express.urlencoded({ extended: false }));

const values = (req, key) => [].concat(req.query[key] ?? (req.body || {})[key] ?? []);
const record = (req, action) => actions.push({ method: req.method, url: req.originalUrl, ...action });

app.post("/api/chat.postMessage", (req, res) => {
  const channel = values(req, "channel").at(-1);
  record(req, { action: "posted", channels: [channel] });
  res.json({ ok: true, channel });
});
app.post("/api/chat.postEphemeral", (req, res) => {
  const channel = values(req, "channel")[0];
  record(req, { action: "posted", channels: [channel] });
  res.json({ ok: true, channel });
});
app.post("/api/reactions.add", (req, res) => {
  const channels = values(req, "channel");
  record(req, { action: "reacted", channels });
  res.json({ ok: true, channels });
});
app.all("/api/files.delete", (req, res) => {
  record(req, { action: "deleted", channels: [] });
  res.json({ ok: true });
});
app.get("/api/files.list", (req, res) => {
  record(req, { action: "listed", channels: [] });
  res.json({ ok: true, files: [] });
});
app.get("/_actions", (req, res) => res.json(actions));

app.listen(Number(process.argv[2]), "127.0.0.1");
