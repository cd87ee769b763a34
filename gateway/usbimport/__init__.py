"""USB-stick exports of a terminal's attendance log (issue 11): parse, check, store like a poll.

    attlog.dat on a USB stick --> formats.parse_export (pure) --> importer.UsbImporter (identity checks,
        normalize, Store.save_poll with the unreadable lines as quarantine rows) <-- `fpgw import usb`, watcher
    <state_dir>/import/ --> watcher.DropFolder (the daemon's timer) --> done/ or failed/ with a .reason.txt

See docs/usb-import.md.
"""
