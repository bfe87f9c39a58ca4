from pathlib import Path

class VLan:
    nr: int
    socket_dir: Path
    def stop(self) -> None: ...
