-- Files attached to orders (web requisitions): scanned requisitions, prior reports.
CREATE TABLE order_attachments (
    attachment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX order_attachments_order ON order_attachments (order_id, created_at);
