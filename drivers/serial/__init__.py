"""Serial-line time clocks (RS232/RS485, USB adapters, serial device servers): the protocol-level part.

    port.open_line(settings) --bytes--> framing.LineFramer --FramedLine--> formats.LineParser --RawPunch | reason
        (pyserial: /dev/ttyUSB0, socket://host:port, rfc2217://host:port)

A serial clock pushes one text line per punch and answers no polls, so this is not a polled driver
(it has no ``open_driver`` and is not in ``drivers.DRIVERS``): gateway.serial runs one reader thread per
configured ``driver = "serial"`` device and stores what these modules produce. Imports nothing from gateway/.
The ZK binary protocol over RS232/RS485 is not publicly documented and is deliberately not implemented
(docs/serial.md says what would be needed).
"""
