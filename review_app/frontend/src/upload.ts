// Imagery upload for the new-project dialog (issue 24 item 2). Placeholder until the upload routes exist.
export function mountUpload(el: HTMLElement, onUploaded: (collection: string) => void): void {
  void onUploaded;
  el.textContent = "Uploading imagery from the browser is not available yet.";
}
