"""Live and in the browser: `meshtalk view` (an animation in a local web page) and `meshtalk
stream` (speech in, frames out as it arrives), on an aiohttp server with a three.js page."""
