"""twistd plugin: ``twistd capture --config etc/capture.ini``."""

from twisted.application.service import ServiceMaker

capture = ServiceMaker("capture", "capture.tap", "HTTP/HTTPS capture appliance for device testing", "capture")
