"""The first-boot wizard (docs/first-boot.md): its settings steps, the web app and its server, the text
wizard, and LAN discovery."""
