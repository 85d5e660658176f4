"""The operator console at /console: pages rendered by signback itself (Jinja2, a little
plain JavaScript, every asset served from receiver/console/static). See docs/console.md."""
